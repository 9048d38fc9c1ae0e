"""ilsgen"""
