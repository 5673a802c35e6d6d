"""The demo region and story behind `make demo` (`python -m xhub.demo`)."""
