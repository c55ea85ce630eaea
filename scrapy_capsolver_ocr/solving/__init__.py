"""The solving core: the per-request options, the solver that checks an image and routes it
to the engines, and what keeps paid calls counted and bounded."""
