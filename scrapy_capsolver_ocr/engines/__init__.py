"""Who reads a captcha image, behind one interface (:mod:`.base`): the local OCR engine
(:mod:`.local`, judged by its confidence gate) and CapSolver's cloud (:mod:`.cloud`)."""
