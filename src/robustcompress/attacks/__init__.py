"""robustcompress.attacks"""
