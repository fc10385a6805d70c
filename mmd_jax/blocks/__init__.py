"""Step building blocks: optimisers, the non-finite guard, micro-batching."""
