"""Bulk study inference: archives in, one record per study out."""
