"""One file per architecture. Every denoiser is called as `model(x, t, y)` and returns a tensor
shaped like `x`; `y` is None for an unconditional model."""
