"""Sphinx configuration for the socs_tcp documentation.

Build with warnings as errors::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

# Document the source tree next to this directory, installed or not.
sys.path.insert(0, os.path.abspath(".."))

import socs_tcp  # noqa: E402

project = "socs_tcp"
author = "socs_tcp contributors"
copyright = "socs_tcp contributors"
release = socs_tcp.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# -- autodoc / napoleon -------------------------------------------------------
autodoc_member_order = "bysource"
# show defaults as written in the source (a sentinel shows as its name, not
# as "<object object at 0x...>")
autodoc_preserve_defaults = True
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Turn the types in "Args:" sections into cross-references.  The alias gives
# the full path where a short class name exists in two modules (the SCPI
# driver and the SCPI simulator both define ScpiInstrument).
napoleon_preprocess_types = True
napoleon_type_aliases = {
    "ScpiInstrument": "~socs_tcp_agents.scpi_instrument.drivers.ScpiInstrument",
}

# -- HTML ---------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"socs_tcp {release}"
html_theme_options = {
    "description": "Robust TCP links to lab and observatory hardware, for OCS",
    "fixed_sidebar": True,
}
