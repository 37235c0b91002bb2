"""The stages the commands run: calibrate, export, validate, rewrite, evaluate, build."""
