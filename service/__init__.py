"""LOKA Serve: the HTTP service and its runtime (engine, jobs) around ``memory_store``.

``python -m service`` runs it (settings: ``LOKA_*`` variables, see ``service.config``);
``service.main.create_app(settings)`` builds the app. Interactive API docs at ``/docs``.

Endpoints: ``/health``, ``/ready``, ``/metrics``; ``/v1/generate``, ``/v1/route``;
OpenAI-compatible ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``;
``/v1/updates`` (202, a job), ``/v1/jobs``; ``/v1/memories``, ``/v1/knowledge``;
``/v1/codebook``, ``/v1/codebook/versions``, ``/v1/codebook/rollback``.
"""

__version__ = "0.1.0"
