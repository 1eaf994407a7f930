# caduceus on a Nomad cluster: every service as a group of its own, all from the one image
# (../../Dockerfile), against one PostgreSQL and one data root shared by every client.
# docs/nomad.md lists what the clients need and how to start it:
#   nomad var put nomad/jobs/caduceus database_url='postgresql://...'
#   nomad job run -var image=registry.example.org/caduceus:1.0 deploy/nomad/caduceus.nomad.hcl
# No secret is written here: the database URL comes from a Nomad variable at run time.

variable "image" {
  type        = string
  description = "The caduceus image, in a registry every client can pull from."
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "data_dir" {
  type        = string
  default     = "/srv/caduceus"
  description = "CADUCEUS_HOME: the path of the shared data root on every client and in every container."
}

variable "data_volume" {
  type        = string
  default     = "caduceus-data"
  description = "The name of the clients' host volume over the shared data root."
}

variable "engine_socket" {
  type        = string
  default     = "/run/caduceus/podman.sock"
  description = "The container engine's API socket on the processor's clients (docs/nomad.md)."
}

variable "engine_socket_gid" {
  type        = string
  default     = "10001"
  description = "The group that may use engine_socket."
}

variable "receivers" {
  type    = number
  default = 2
}

variable "routers" {
  type    = number
  default = 2
}

variable "processors" {
  type    = number
  default = 1
}

variable "dispatchers" {
  type    = number
  default = 2
}

job "caduceus" {
  type        = "service"
  datacenters = var.datacenters

  # One allocation at a time is replaced; its work is taken over by lease meanwhile. No
  # automatic rollback: the new version may have migrated the schema, which the old one then
  # refuses to run against (docs/nomad.md, "Upgrading").
  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "5m"
    auto_revert      = false
  }

  # Any number of receivers; each client runs at most one, on the DICOM port of its own
  # address, so a TCP load balancer in front (or senders pointed at each) spreads the work.
  group "receiver" {
    count = var.receivers

    network {
      port "dicom" {
        static = 11112
        to     = 11112
      }
    }

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    service {
      provider = "nomad"
      name     = "caduceus-dicom"
      port     = "dicom"

      check {
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    task "receiver" {
      driver = "docker"
      user   = "10001:10001"
      # Time to finish the image in hand; an association cut off is resent by its sender.
      kill_timeout = "30s"

      config {
        image           = var.image
        args            = ["receiver"]
        ports           = ["dicom"]
        init            = true
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
        }
      }

      volume_mount {
        volume      = "data"
        destination = var.data_dir
      }

      env {
        CADUCEUS_HOME             = var.data_dir
        CADUCEUS_LOG_FORMAT       = "json"
        CADUCEUS_RECEIVER_WORKERS = "2"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/caduceus" }}CADUCEUS_DATABASE_URL={{ .database_url }}{{ else }}CADUCEUS_DATABASE_URL=missing:set-nomad/jobs/caduceus-database_url{{ end }}
        EOT
        destination = "secrets/database.env"
        env         = true
        # A variable without database_url stops the task, instead of it starting on SQLite.
        error_on_missing_key = true
      }

      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }

  # Routers share the work through the database; one series or study is never routed by two
  # at once (a lock per group in PostgreSQL).
  group "router" {
    count = var.routers

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "router" {
      driver       = "docker"
      user         = "10001:10001"
      kill_timeout = "30s"

      config {
        image           = var.image
        args            = ["router"]
        init            = true
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
        }
      }

      volume_mount {
        volume      = "data"
        destination = var.data_dir
      }

      env {
        CADUCEUS_HOME       = var.data_dir
        CADUCEUS_LOG_FORMAT = "json"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/caduceus" }}CADUCEUS_DATABASE_URL={{ .database_url }}{{ else }}CADUCEUS_DATABASE_URL=missing:set-nomad/jobs/caduceus-database_url{{ end }}
        EOT
        destination = "secrets/database.env"
        env         = true
        # A variable without database_url stops the task, instead of it starting on SQLite.
        error_on_missing_key = true
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  # Processors start module containers through the container engine of their client. Whoever
  # holds a rootful engine's socket is root on that client: give engine_socket a rootless
  # Podman socket of a dedicated user (docs/nomad.md), and pin processors to the clients
  # meant for modules (GPU clients, say) with a constraint.
  group "processor" {
    count = var.processors

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "processor" {
      driver = "docker"
      user   = "10001:10001"
      # A stopped processor stops the module in hand and hands the step to another processor
      # at once. 30 s is the most a Nomad client allows unless its max_kill_timeout is raised.
      kill_timeout = "30s"

      config {
        image           = var.image
        args            = ["processor"]
        init            = true
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]
        group_add       = [var.engine_socket_gid]

        mount {
          type   = "tmpfs"
          target = "/tmp"
        }

        # A bind mount: the clients' docker plugin needs volumes enabled (docs/nomad.md).
        mount {
          type   = "bind"
          source = var.engine_socket
          target = "/run/caduceus/engine.sock"
        }
      }

      # The engine mounts task folders by their path on the client: the data root must have
      # the same path here as there.
      volume_mount {
        volume      = "data"
        destination = var.data_dir
      }

      env {
        CADUCEUS_HOME                 = var.data_dir
        CADUCEUS_LOG_FORMAT           = "json"
        CADUCEUS_PROCESSOR_DOCKER_URL = "unix:///run/caduceus/engine.sock"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/caduceus" }}CADUCEUS_DATABASE_URL={{ .database_url }}{{ else }}CADUCEUS_DATABASE_URL=missing:set-nomad/jobs/caduceus-database_url{{ end }}
        EOT
        destination = "secrets/database.env"
        env         = true
        # A variable without database_url stops the task, instead of it starting on SQLite.
        error_on_missing_key = true
      }

      resources {
        cpu    = 500
        memory = 1024
      }
    }
  }

  # Dispatchers share the tasks by lease; a dispatcher that dies mid-send leaves its task to
  # another once the lease expires, which resends only what was not confirmed.
  group "dispatcher" {
    count = var.dispatchers

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "dispatcher" {
      driver       = "docker"
      user         = "10001:10001"
      kill_timeout = "30s"

      config {
        image           = var.image
        args            = ["dispatcher"]
        init            = true
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
        }
      }

      volume_mount {
        volume      = "data"
        destination = var.data_dir
      }

      env {
        CADUCEUS_HOME       = var.data_dir
        CADUCEUS_LOG_FORMAT = "json"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/caduceus" }}CADUCEUS_DATABASE_URL={{ .database_url }}{{ else }}CADUCEUS_DATABASE_URL=missing:set-nomad/jobs/caduceus-database_url{{ end }}
        EOT
        destination = "secrets/database.env"
        env         = true
        # A variable without database_url stops the task, instead of it starting on SQLite.
        error_on_missing_key = true
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  # Keep one cleaner: it decides over the whole data root.
  group "cleaner" {
    count = 1

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "cleaner" {
      driver       = "docker"
      user         = "10001:10001"
      kill_timeout = "30s"

      config {
        image           = var.image
        args            = ["cleaner"]
        init            = true
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
        }
      }

      volume_mount {
        volume      = "data"
        destination = var.data_dir
      }

      env {
        CADUCEUS_HOME       = var.data_dir
        CADUCEUS_LOG_FORMAT = "json"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/caduceus" }}CADUCEUS_DATABASE_URL={{ .database_url }}{{ else }}CADUCEUS_DATABASE_URL=missing:set-nomad/jobs/caduceus-database_url{{ end }}
        EOT
        destination = "secrets/database.env"
        env         = true
        # A variable without database_url stops the task, instead of it starting on SQLite.
        error_on_missing_key = true
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }

  # Keep one notifier, so that each event is announced once.
  group "notifier" {
    count = 1

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "notifier" {
      driver       = "docker"
      user         = "10001:10001"
      kill_timeout = "30s"

      config {
        image           = var.image
        args            = ["notifier"]
        init            = true
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
        }
      }

      volume_mount {
        volume      = "data"
        destination = var.data_dir
      }

      env {
        CADUCEUS_HOME       = var.data_dir
        CADUCEUS_LOG_FORMAT = "json"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/caduceus" }}CADUCEUS_DATABASE_URL={{ .database_url }}{{ else }}CADUCEUS_DATABASE_URL=missing:set-nomad/jobs/caduceus-database_url{{ end }}
        EOT
        destination = "secrets/database.env"
        env         = true
        # A variable without database_url stops the task, instead of it starting on SQLite.
        error_on_missing_key = true
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }

  # The web interface and API on a port Nomad picks; put a proxy with HTTPS in front of the
  # "caduceus-web" service (docs/nomad.md).
  group "web" {
    count = 1

    network {
      port "http" {
        to = 8000
      }
    }

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    service {
      provider = "nomad"
      name     = "caduceus-web"
      port     = "http"

      # The login page is the one page served without a session.
      check {
        type     = "http"
        path     = "/login"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    task "web" {
      driver       = "docker"
      user         = "10001:10001"
      kill_timeout = "30s"

      config {
        image           = var.image
        args            = ["web"]
        ports           = ["http"]
        init            = true
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]

        mount {
          type   = "tmpfs"
          target = "/tmp"
        }
      }

      volume_mount {
        volume      = "data"
        destination = var.data_dir
      }

      env {
        CADUCEUS_HOME       = var.data_dir
        CADUCEUS_LOG_FORMAT = "json"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/caduceus" }}CADUCEUS_DATABASE_URL={{ .database_url }}{{ else }}CADUCEUS_DATABASE_URL=missing:set-nomad/jobs/caduceus-database_url{{ end }}
        EOT
        destination = "secrets/database.env"
        env         = true
        # A variable without database_url stops the task, instead of it starting on SQLite.
        error_on_missing_key = true
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
