"""Engines: where generation runs outside this process (an OpenAI-compatible server, a Ray cluster).

Each engine is a plug-in behind the :class:`~synthloop.protocols.Generator` protocol (and helpers
that other plug-ins use: a judge or labeler that asks a served model). Their heavy dependencies
(``openai``, ``ray``) are imported only inside these modules, when they are used.
"""
