"""`postwire inbound`: the SMTP server of the bounce domain, which turns the DSNs, feedback
reports and bounces that come back to VERP return paths into events and suppressions."""
