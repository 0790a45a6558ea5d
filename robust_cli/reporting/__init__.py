"""robust_cli.reporting"""
