"""Who reads a captcha image, behind one interface (:mod:`.base`): the local OCR engine
(:mod:`.local`) and CapSolver's cloud."""
