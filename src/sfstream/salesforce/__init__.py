"""Salesforce REST calls the connector makes (`rest`): describe, eventSchema, queries.

Channel names and stream ids are in `sfstream.streams`.
"""
