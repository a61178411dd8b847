"""actspace.steer: find directions in activation space and steer models with them.

vector.py         SteeringVector (from_contrast: mean / pca / pca_centered / probe; save,
                  load, GGUF)
interventions.py  ablate, steer_with_sae
sweep.py          steering_sweep (effect vs KL / perplexity / cosine change over alphas)
gguf.py           llama.cpp control-vector reader/writer
editing.py        Intervention, the context every intervention is (hooks installed on
                  enter, removed on exit), and the edit helpers (masked_update, ...)
calls.py          which tokens a forward may edit: padding, KV-cache past, prompt length
activations.py    pooled activations of texts and a logistic-regression probe

Nothing is imported here so that `import actspace` stays light; the public names are
reached lazily through `actspace.SteeringVector`, `actspace.ablate`, ...
"""
