"""Autointerp: explain the latents of a sparse latent store with an LLM and score the
explanations (embedding, detection, fuzzing), in the spirit of EleutherAI's delphi.

Layout (one concern per file): llm.py (OpenAI-compatible HTTP client), cache.py (on-disk
response cache), sampling.py (examples from a latent store), prompts.py (explainer and
scorer prompts, answer parsing), explainer.py (acts.explain), embedding.py (local sentence
embedder and the embedding scorer), classifier.py (detection and fuzzing scorers),
metrics.py (AUROC, balanced accuracy), scoring.py (acts.score_explanations, the scorer
registry), results.py (the explanations file).

Only sampling.py and the embedder import torch, and only when they run: `acts.llm`,
`acts.explain` and `acts.score_explanations` import in milliseconds. Nothing touches the
network unless a client with an endpoint is passed.
"""
