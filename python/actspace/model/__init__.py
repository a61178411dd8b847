"""actspace.model: access to a model's activations, below capture, steer and decompose.

hookpoints.py   hookpoint names ("path", "path:input", globs) -> modules; layer helpers
families.py     per-family tables (layer list, attention/MLP sites, projections, heads)
hooks.py        the one read/replace hook pair (positional and keyword inputs; tensor,
                tuple and ModelOutput/dataclass outputs) every hook in actspace goes through
padding.py      token rows -> padded batch, pad id, real-token position ids
hook_names.py   TransformerLens/SAELens, sparsify and Gemma Scope hook names -> hookpoints

Nothing is imported here, so `import actspace` stays light.
"""
