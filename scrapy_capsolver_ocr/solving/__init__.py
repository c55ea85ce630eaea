"""The solving core: the per-request options (:mod:`.options`, checked once) and the solver
(:mod:`.solver`) that checks an image and asks its engines in turn."""
