"""The REST API subset streaming clients and their test harnesses use.

Everything lives under `/services/data/vXX.X/`, one module per job:

- `describe`: versions, resources, describe global and sobject describe, `eventSchema`,
  `limits`;
- `query`: SOQL `query`, `queryAll` and `tooling/query`;
- `records`: record create, read, update and delete, and platform event publishing;
- `streaming_sobjects`: PushTopic and StreamingChannel records;
- `push`: generic streaming `push`;
- `composite`: sObject collections (`composite/sobjects`);
- `common`: the shared context, JSON bodies and Salesforce's error arrays.

`api.RestApi` wires them and lists their routes for the app.
"""
