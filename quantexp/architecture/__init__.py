"""Architecture analysis (``quantexp analyze``, ``quantexp.analyze``): what a model is made
of and what quantizing it risks.

- ``census``: layers by kind, parameters and MACs (FlopCounterMode), the family;
- ``stats``: weight and activation statistics on calibration data, and the risks they predict;
- ``matrix``: every method x precision x exporter x hardware cell for this model, decided
  by the checks that refuse runs;
- ``run``: ``analyze`` (a module) / ``analyze_model`` (a configured model), the files, MLflow;
- ``command``: ``quantexp analyze model=<m>``.
"""
