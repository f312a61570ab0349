"""Getting and storing model packages: sources, downloads and their fetch policy, uploads, staging
and unpacking, the content-addressed cache and its index, zips for runtimes, and reading and
validating descriptions in bounded worker processes."""
