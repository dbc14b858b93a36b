"""robustcompress.data"""
