with source as (

    select * from {{ lake_partitions('landing', 'transactions') }}
    where date >= {{ window_start() }} and date < {{ window_end() }}

),

renamed as (

    select
        transaction_id,
        tx_datetime,
        date as tx_date,
        customer_id,
        terminal_id,
        tx_amount,
        extras,
        source_file,
        ingest_run_id
    from source

)

select * from renamed
