"""Beam runners we ship fixed versions of; `pipelines.options` maps their `--runner` names here."""
