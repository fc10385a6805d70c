"""Training methods. Each is a module of pure functions over a state pytree:
`init(...) -> state`, `step(state, batch, key) -> (state, metrics)`."""
