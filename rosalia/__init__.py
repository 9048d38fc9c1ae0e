"""rosalia"""
