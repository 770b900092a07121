"""``python -m styleseg.cli``: the same as the ``styleseg`` command."""

from styleseg.cli import app

app()
