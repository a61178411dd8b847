"""actspace.decompose: decompositions of activation spaces (SAEs and transcoders, SNMF, PCA).

All follow decompose.base.Decomposition (fit, encode, decode, save, load). Public names are
reached lazily through the top-level package: acts.SAE, acts.train_sae, ...
"""
