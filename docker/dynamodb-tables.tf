# Tributary's DynamoDB tables for production, and the one IAM policy Tributary needs:
# the Terraform equivalent of docker/dynamodb-tables.yaml (CloudFormation), which
# explains each table's access pattern at more length.
#
#   terraform init && terraform apply -var table_prefix=prod_
#
# Then attach aws_iam_policy.tributary (output tributary_policy_arn) to the role
# Tributary runs as, and set in tributary.toml
#
#   [dynamodb]
#   table_prefix = "prod_"     # the same as var.table_prefix
#   create_tables = false      # the tables are managed here: a typo fails, never creates
#
# With create_tables = true (the default) Tributary would create a missing table
# itself (on-demand billing, the pipeline's key and `index.*` indexes, but no PITR or
# deletion protection), which needs dynamodb:CreateTable. The policy below deliberately
# does not grant it; grant it only to a role that runs with create_tables = true.

terraform {
  required_version = ">= 1.3"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "table_prefix" {
  description = "Put before every table name; must equal dynamodb.table_prefix in tributary.toml (e.g. prod_). Empty for none."
  type        = string
  default     = ""
  validation {
    # The characters tributary.toml's dynamodb.table_prefix accepts.
    condition     = can(regex("^[A-Za-z0-9_.-]*$", var.table_prefix))
    error_message = "table_prefix may hold only letters, digits, '_', '-' and '.'."
  }
}

# `checkpoint: { store: dynamodb }`: every pipeline's checkpoints. GetItem of
# (pipeline, "head") and its conditional PutItem (the commit, which fences a second
# process); Query of pipeline = P AND begins_with(item, "meta|" / "blob|" / "writer|")
# to list checkpoints and read state chunks (written with BatchWriteItem); DeleteItem
# and a conditional UpdateItem to drop old ones. Strongly consistent reads.
# Losing it loses every pipeline's position and state: PITR, deletion protection and
# prevent_destroy.
resource "aws_dynamodb_table" "checkpoints" {
  name         = "${var.table_prefix}tributary_checkpoints"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pipeline"
  range_key    = "item"

  attribute {
    name = "pipeline"
    type = "S"
  }
  attribute {
    name = "item"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }
  deletion_protection_enabled = true

  lifecycle {
    prevent_destroy = true
  }
}

# The order-status table the mobile backend reads: one item per order (its latest
# status; NULL columns left out; timestamps as ISO 8601 UTC strings with microseconds;
# `_version` N, growing per item, about 25 digits: not a 64-bit integer).
# - one order by id: GetItem on order_id;
# - a customer's orders, newest first: Query index by_customer, customer_id = :c,
#   ScanIndexForward = false;
# - a customer's active orders: Query index active_by_customer, active_customer_id = :c.
#   The pipeline sets active_customer_id to NULL once an order is final (picked up,
#   delivered, cancelled); NULL attributes are left out of the item, so the sparse
#   index only holds orders in progress.
# Orders without a known customer have no customer_id and are in neither index.
# Items never expire (TTL off). Tributary checks the key's names at start, not the
# types: N/S here must match the query's columns (BIGINT ids, timestamp string), or
# every item is refused and becomes a dead letter.
resource "aws_dynamodb_table" "order_status" {
  name         = "${var.table_prefix}order_status"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "order_id"

  attribute {
    name = "order_id"
    type = "N"
  }
  attribute {
    name = "customer_id"
    type = "N"
  }
  attribute {
    name = "active_customer_id"
    type = "N"
  }
  attribute {
    name = "status_time"
    type = "S"
  }

  global_secondary_index {
    name            = "by_customer"
    hash_key        = "customer_id"
    range_key       = "status_time"
    projection_type = "ALL"
  }
  global_secondary_index {
    name            = "active_by_customer"
    hash_key        = "active_customer_id"
    range_key       = "status_time"
    projection_type = "ALL"
  }

  # No ttl block: TTL stays disabled (items never expire). An explicit
  # `ttl { enabled = false }` needs a provider in which ttl.attribute_name is optional.
  point_in_time_recovery {
    enabled = true
  }
}

# Everything Tributary calls on these tables, nothing more: DescribeTable (at start),
# GetItem/Query (checkpoints), PutItem/DeleteItem/UpdateItem (the sink's versioned
# conditional writes, checkpoint commits), BatchWriteItem (write_mode = 'batch',
# checkpoint blobs), BatchGetItem (lookup tables). Tributary never queries the indexes,
# so their ARNs are not here (the mobile backend's read policy needs them). Not
# granted: dynamodb:CreateTable (only with create_tables = true). Add the ARN of any
# other sink or lookup table.
data "aws_iam_policy_document" "tributary" {
  statement {
    sid    = "TributaryTables"
    effect = "Allow"
    actions = [
      "dynamodb:DescribeTable",
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:DeleteItem",
      "dynamodb:UpdateItem",
      "dynamodb:Query",
      "dynamodb:BatchWriteItem",
      "dynamodb:BatchGetItem",
    ]
    resources = [
      aws_dynamodb_table.checkpoints.arn,
      aws_dynamodb_table.order_status.arn,
    ]
  }
}

resource "aws_iam_policy" "tributary" {
  name_prefix = "${var.table_prefix}tributary-dynamodb-"
  description = "Tributary's access to its DynamoDB tables (prefix '${var.table_prefix}')"
  policy      = data.aws_iam_policy_document.tributary.json
}

output "checkpoint_table_name" {
  value = aws_dynamodb_table.checkpoints.name
}

output "order_status_table_name" {
  value = aws_dynamodb_table.order_status.name
}

output "order_status_table_arn" {
  value = aws_dynamodb_table.order_status.arn
}

output "tributary_policy_arn" {
  description = "Attach to the role Tributary runs as."
  value       = aws_iam_policy.tributary.arn
}
