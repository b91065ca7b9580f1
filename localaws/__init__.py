"""A local AWS endpoint for this project: moto's server, patched where moto differs from
EC2 in ways that matter to the backup and the restore, with faults, throttling and a
call log (endpoint.py); and a small fleet to run on it (fleet.py).

tests/, bench/ and demo/ use it; the two scripts never import it: they reach it over
HTTP through AWS_ENDPOINT_URL, exactly as they reach AWS.
"""
