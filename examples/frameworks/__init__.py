"""The same three pages in Pyramid, Bottle and Falcon, each served by asyncwsgi; see each module."""
