"""HTTP views served by every worker (Faust's web server)."""
