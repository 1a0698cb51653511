"""Curve fitting for ``cram fit-gamma``: data and readers (``data``), one model on one data set
(``core``), intervals and robustness checks (``uncertainty``), the whole analysis and its
Result (``analysis``: ``run(FitConfig(...), progress)``), the text report (``report``) and the
figure (``plot``)."""
