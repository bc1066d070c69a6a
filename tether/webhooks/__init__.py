"""Webhooks (DESIGN §9): tenants' endpoints, and the deliveries of what happened to them.

`records` holds the records and statuses (the domain layer: the store reads them);
`endpoints` the use cases the API calls; `dispatcher` the delivery loop every process that
runs workers also runs. The outbox rows themselves are written by the store
(store/webhooks.py), in the transaction of the state change they report.
"""
