"""Command-line tools: ``pom-export`` and ``pom-deploy``, thin layers over the Python API."""
