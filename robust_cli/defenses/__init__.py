"""robust_cli.defenses"""
