"""Reaching a patient whose page is closed: Web Push (RFC 8030) with ``aes128gcm`` payload
encryption (RFC 8291) and VAPID (RFC 8292), and the escalation of unacknowledged messages.

Modules: ``ece`` (the payload encryption), ``vapid`` (the server's key and its JWTs),
``subscriptions`` (checking what a browser sends), ``sender`` (the HTTP to push services),
``escalator`` (the cluster-wide timer that decides what to escalate, exactly once).
"""
