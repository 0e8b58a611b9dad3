"""One-off studies behind figures in docs/ (BENCHMARKS.md, EXPORT.md): not part of the installed package.

Run them from the root of a checkout, e.g. ``python -m studies.pipeline --model BUNDLE --out DIR``;
they import the installed ``dermsort`` (an editable install of the same checkout) and nothing imports
them back. The measurements the product itself needs (``dermsort bench``) live in bench/.
"""
