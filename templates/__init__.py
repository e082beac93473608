"""Jinja2 templates, CSS and JS of the report (shipped inside the wheel as reportgen.templates)."""
