"""Consumers of a run's or a sweep's results: the end-of-run summary table
(``summary``) and the PTQ-vs-QAT comparison of a sweep (``ptq_vs_qat``, run by its
own sweep callback ``callbacks.PtqVsQatCallback``)."""
