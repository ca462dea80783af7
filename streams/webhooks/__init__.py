"""Event webhooks: postwire's events as SendGrid's Event Webhook JSON, batched per endpoint,
signed as SendGrid signs them, and posted (pure cores; the stage that runs them is
``streams/stages/webhooks.py``)."""
