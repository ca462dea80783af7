"""Delivery: render a send request into messages, DKIM-sign them, hand them to SMTP."""
