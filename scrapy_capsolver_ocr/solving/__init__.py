"""The solving core: the checked options of a solve (:mod:`.options`), the solver that checks
an image and asks its readers (:mod:`.solver`), and what keeps paid calls bounded: the retry
policy (:mod:`.retry`) and the account's guard (:mod:`.account`)."""
