"""`hybridft search`: Optuna finds the best hybrid strategy and its settings for a task.

``space`` turns the recipe's ``search:`` section into Optuna's draws and trial recipes; ``split``
holds out the inner validation rows the trials are scored on; ``study`` opens the study on its
storage (shared by several workers); ``engine`` runs the trials, the confirmation runs and the final
run; ``report`` writes report.md and report.html.
"""
