"""Curve fitting for ``cram fit-gamma``: data and readers (``data``), one model on one data set
(``core``), intervals and robustness checks (``uncertainty``), the whole analysis and its report
(``analysis``), and the plot (``plot``)."""
