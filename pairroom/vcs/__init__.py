"""Version control of a room: open a git repository, commit crediting everyone, push, pull live, blame."""
