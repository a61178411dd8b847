"""The maths of the SAE kinds added by issue 14 (Matryoshka BatchTopK, JumpReLU trained to
an L0 target, gated SAEs) as pure functions of tensors, tested in float64 against hand
computations. Staged here while the kind registry (decompose/kinds/) is being built; each
file moves there as the kind's training forward and loss."""
