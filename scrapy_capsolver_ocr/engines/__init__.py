"""Who reads a captcha image, behind one interface (:mod:`.base`): the local OCR engine
(:mod:`.local`, with its confidence gate) and CapSolver's cloud (:mod:`.cloud`)."""
