//! The Arrow Flight SQL endpoint (`tributary query --serve`): the same
//! [`QuerySession`] as `tributary query`, for notebooks and BI tools through their
//! ADBC or JDBC Flight SQL drivers (arrow-flight's `FlightSqlService` on tonic,
//! ADR 0017).
//!
//! What it answers:
//!
//! - **Queries**: `CommandStatementQuery` — `GetFlightInfo` plans the statement and
//!   returns its schema with one endpoint whose ticket carries the statement itself
//!   (`TicketStatementQuery`; the server keeps nothing between the two calls);
//!   `DoGet` runs it and streams the record batches. Prepared statements without
//!   parameters (the handle is the statement) for drivers that prepare first; binding
//!   parameters is refused.
//! - **Metadata**: `GetCatalogs` (`tributary`), `GetDbSchemas` (`public`),
//!   `GetTables` (type `TABLE`, with each table's Arrow schema when asked: what ADBC's
//!   `adbc_get_objects()` reads), `GetTableTypes`, `GetSqlInfo` (name, version,
//!   read-only).
//! - Nothing else: no updates, ingestion, transactions or Substrait.
//!
//! **Authentication**: none by default (the endpoint listens on loopback). With a
//! token (`[query] token`), every call must carry `authorization: Bearer <token>`, or
//! `Basic` credentials whose password is the token (any user name); the handshake
//! then returns the bearer token, as drivers that log in with a user and password
//! expect.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{CATALOG, QueryError, QuerySession, SCHEMA};

/// The table type every table has in `GetTables`.
const TABLE_TYPE: &str = "TABLE";

type DoGetStream = <FlightSqlEndpoint as FlightService>::DoGetStream;

/// The Flight SQL service over a [`QuerySession`].
pub struct FlightSqlEndpoint {
    session: QuerySession,
    token: Option<Arc<str>>,
}

impl FlightSqlEndpoint {
    /// `token`: the bearer token every call must carry (`None`: no authentication).
    pub fn new(session: QuerySession, token: Option<String>) -> Self {
        FlightSqlEndpoint {
            session,
            token: token.filter(|t| !t.is_empty()).map(Into::into),
        }
    }

    /// Serves on `listener` until `shutdown` resolves (then finishes the calls in
    /// flight and returns).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), QueryError> {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let token = self.token.clone();
        let service = FlightServiceServer::with_interceptor(self, move |req: Request<()>| {
            authorize(token.as_deref(), req)
        });
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown,
            )
            .await
            .map_err(|e| QueryError::Serve {
                listen: addr,
                message: e.to_string(),
            })
    }

    /// Plans `sql`, for its schema.
    async fn schema_of(&self, sql: &str) -> Result<SchemaRef, Status> {
        let df = self.session.sql(sql).await.map_err(status)?;
        Ok(Arc::new(df.schema().as_arrow().clone()))
    }

    /// Runs `sql`, streaming its batches as Flight data.
    async fn run(&self, sql: &str) -> Result<Response<DoGetStream>, Status> {
        let df = self.session.sql(sql).await.map_err(status)?;
        let stream = df
            .execute_stream()
            .await
            .map_err(|e| status(super::failed(e)))?;
        let schema = stream.schema();
        tracing::debug!(sql, "flight sql: running a query");
        let batches = stream.map_err(|e| FlightError::ExternalError(Box::new(e)));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(data)))
    }
}

/// A refused query is the client's error; the rest are the server's.
fn status(e: QueryError) -> Status {
    match e {
        QueryError::Refused(m) => Status::invalid_argument(format!("QRY001: query refused: {m}")),
        other => Status::internal(format!("{}: {other}", other.code())),
    }
}

/// Lets a call in when no token is set, or when it carries the token (as a bearer
/// token, or as the password of basic credentials).
fn authorize(token: Option<&str>, req: Request<()>) -> Result<Request<()>, Status> {
    let Some(token) = token else {
        return Ok(req);
    };
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let given = if let Some(bearer) = header.strip_prefix("Bearer ") {
        Some(bearer.trim().to_string())
    } else if let Some(basic) = header.strip_prefix("Basic ") {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()))
    } else {
        None
    };
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => Ok(req),
        Some(_) => Err(Status::unauthenticated("invalid token")),
        None => Err(Status::unauthenticated(
            "this endpoint needs a token: authorization: Bearer <token>",
        )),
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sql_info() -> &'static SqlInfoData {
    static INFO: OnceLock<SqlInfoData> = OnceLock::new();
    INFO.get_or_init(|| {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "tributary");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.build().expect("static sql info builds")
    })
}

/// A FlightInfo whose one endpoint's ticket is `command` itself.
fn info_for(
    command: Any,
    schema: &arrow::datatypes::Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(command.encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// One batch (or its error) as a Flight data stream.
fn one_batch<E>(
    schema: SchemaRef,
    batch: Result<arrow::array::RecordBatch, E>,
) -> Response<DoGetStream>
where
    FlightError: From<E>,
{
    let batch = batch.map_err(FlightError::from);
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { batch }))
        .map_err(Status::from);
    Response::new(Box::pin(data))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlEndpoint {
    type FlightService = FlightSqlEndpoint;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The interceptor has checked the credentials already.
        let token = self.token.as_deref().unwrap_or_default().to_string();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        if !token.is_empty() {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("the token is not a valid header value"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.schema_of(&query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        info_for(ticket.as_any(), &schema, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the ticket is not a statement"))?;
        self.run(&sql).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let schema = self.schema_of(&query.query).await?;
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = String::from_utf8(cmd.prepared_statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("unknown prepared statement"))?;
        let schema = self.schema_of(&sql).await?;
        info_for(cmd.as_any(), &schema, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = String::from_utf8(cmd.prepared_statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("unknown prepared statement"))?;
        self.run(&sql).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        _query: CommandPreparedStatementQuery,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        Err(Status::unimplemented(
            "parameters are not supported: put the values in the statement",
        ))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        for (name, schema) in self.session.tables().await {
            b.append(CATALOG, SCHEMA, name, TABLE_TYPE, &schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(TABLE_TYPE);
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(sql_info()).schema();
        info_for(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(sql_info());
        Ok(one_batch(b.schema(), b.build()))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
