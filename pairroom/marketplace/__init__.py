"""The extension marketplace: a catalog the operator trusts, verified installs, per-room switches and
browser-side panels. See ``docs/extensions.md``."""
