"""Operations: where the parts run and how they are started, stopped and watched (runtimes, the
supervisor, the embedded broker, stacks). Above the services and components; below the tools and CLI."""
