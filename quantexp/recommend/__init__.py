"""Method recommendation (``quantexp recommend``): which method to apply to a model for a
target under constraints, predicted from measured history and verified on request.

- ``rules``: the prior (what each method usually does) and what each costs to apply;
- ``history``: finished MLflow runs as records, each with its model's features;
- ``predict``: nearest neighbours over the features, blended with the prior;
- ``rank``: constraints, cost-benefit ordering;
- ``advise``: the whole recommendation, printed, written, verified;
- ``command``: the command line.
"""
